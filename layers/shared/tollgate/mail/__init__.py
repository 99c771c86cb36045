"""Mail: a service that logs every message in `email_logs`, enforces the anti-spam window, and hands the
message to a backend (local: console + one `.eml` file per message; AWS: SES through boto3)."""

from tollgate.mail.service import OutgoingMail, send_mail

__all__ = ["OutgoingMail", "send_mail"]
