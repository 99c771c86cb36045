"""Domain errors: named failures the services raise. They know nothing of HTTP; `tollgate.http.errors` maps
each class to a status code in one table. `code` is the machine-readable name clients see."""

from __future__ import annotations

from typing import Any


class TollgateError(Exception):
    code = "error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigurationError(TollgateError):
    """The deployment is missing or mis-stating a setting."""

    code = "configuration_error"


class DependencyUnavailable(TollgateError):
    """A service Tollgate depends on (the database, a provider) cannot be reached right now."""

    code = "dependency_unavailable"


class SchemaOutdated(DependencyUnavailable):
    """The database's schema is not at the revisions this code expects (the deploy's migration has not run or
    failed): nothing can be served until it is."""

    code = "schema_outdated"


class DatabaseUnavailable(DependencyUnavailable):
    """The database cannot serve right now (lost, restarting, refusing connections, too slow): retry later.
    Raised where a service wraps every failure in a named error of its own (webhook receivers)."""


# --- request shape (raised by the HTTP edge, before any service runs) -------------------------------------------
class BadRequest(TollgateError):
    code = "bad_request"


class UnstorableText(BadRequest):
    """Text PostgreSQL cannot hold: NUL characters or unpaired UTF-16 surrogates."""

    code = "invalid_text"


class MalformedJson(BadRequest):
    code = "malformed_json"


class InvalidCursor(BadRequest):
    """A pagination cursor the server did not issue for that list: tampered, truncated or malformed."""

    code = "invalid_cursor"


class UnsupportedMediaType(TollgateError):
    code = "unsupported_media_type"


class PayloadTooLarge(TollgateError):
    code = "payload_too_large"


class ValidationFailed(TollgateError):
    code = "validation_error"


# --- generic domain outcomes ------------------------------------------------------------------------------------
class NotFound(TollgateError):
    code = "not_found"


class Conflict(TollgateError):
    code = "conflict"


class Unauthenticated(TollgateError):
    code = "unauthenticated"


class Forbidden(TollgateError):
    code = "forbidden"


class RateLimited(TollgateError):
    code = "too_many_attempts"


# --- credits (the ledger) ---------------------------------------------------------------------------------------
class InsufficientCredits(TollgateError):
    """Not enough spendable credits; `details` carry the balance and what was asked."""

    code = "insufficient_credits"


class IdempotencyConflict(Conflict):
    """The idempotency key was already used for a different request."""

    code = "idempotency_conflict"


class UnknownOperation(ValidationFailed):
    """No cost is configured for the operation."""

    code = "unknown_operation"


class HoldNotFound(NotFound):
    code = "hold_not_found"


class HoldNotActive(Conflict):
    """The hold was already captured, released or expired."""

    code = "hold_not_active"


class RefundExceedsCharge(Conflict):
    """Refunds of one charge would exceed what it charged, in total."""

    code = "refund_exceeds_charge"


class TransactionNotFound(NotFound):
    code = "transaction_not_found"


class NotRefundable(Conflict):
    """Only charges (usage, captures, negative adjustments) can be refunded."""

    code = "not_refundable"


class BonusAutoUseLocked(Forbidden):
    """The deployment does not let users choose whether purchased credits are used automatically."""

    code = "bonus_auto_use_locked"


# --- auth (issue 4) -----------------------------------------------------------------------------------------
class InvalidCredentials(Unauthenticated):
    code = "invalid_credentials"


class InvalidRefreshToken(Unauthenticated):
    code = "invalid_refresh_token"


class RefreshTokenReused(Unauthenticated):
    """A rotated refresh token came back: the whole session was revoked."""

    code = "refresh_token_reused"


class InvalidTwoFactorCode(Unauthenticated):
    code = "invalid_code"


class InvalidToken(BadRequest):
    """A mailed link's token (verification, reset) is unknown, used or expired."""

    code = "invalid_token"


class EmailNotVerified(Forbidden):
    code = "email_not_verified"


class AccountDisabled(Forbidden):
    """Suspended, locked or deleted: no sign-in, no tokens, no keys."""

    code = "account_disabled"


class ReauthenticationRequired(Forbidden):
    """A credential change needs a session that proved the password (and second factor) within the step-up
    window; API keys never qualify. POST /auth/reauthenticate opens a new window."""

    code = "reauthentication_required"


class ScopeNotAllowed(Forbidden):
    """An API key asked for a scope its user may not grant (e.g. `admin` by a non-staff user)."""

    code = "scope_not_allowed"


class BuiltinAuthDisabled(Forbidden):
    """AUTH_MODE=clerk: Clerk signs users in; the built-in credential routes are off."""

    code = "builtin_auth_disabled"


class WeakPassword(ValidationFailed):
    code = "weak_password"


class UsernameTaken(Conflict):
    code = "username_taken"


class PasswordNotSet(Conflict):
    code = "password_not_set"


class TwoFactorStateConflict(Conflict):
    code = "two_factor_state"


class OAuthFailed(BadRequest):
    code = "oauth_failed"


# --- knowledge base (issue 7) -----------------------------------------------------------------------------------
class EmbeddingUnavailable(DependencyUnavailable):
    """The embedding provider (local model, Bedrock, OpenAI) failed or cannot be reached."""

    code = "embedding_unavailable"


class LlmUnavailable(DependencyUnavailable):
    """The answering model (Bedrock Converse, OpenAI chat) failed or cannot be reached; nothing was charged."""

    code = "llm_unavailable"


class ChunkNotFound(NotFound):
    code = "chunk_not_found"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"


class AskRateLimited(RateLimited):
    """Too many asks in the current window for the caller's tier; `details` say when to retry."""

    code = "rate_limited"


class EmptyDocument(ValidationFailed):
    """A document produced no chunk to store (blank markdown, or only headings)."""

    code = "empty_document"


# --- payments (issue 5) -----------------------------------------------------------------------------------------
class InvalidSignature(BadRequest):
    """A webhook whose signature is missing, wrong or outside the time tolerance: nothing was stored."""

    code = "invalid_signature"


class WebhookProcessingFailed(TollgateError):
    """Applying a verified webhook failed; everything it did was rolled back and the provider should retry (5xx)."""

    code = "webhook_processing_failed"


class WebhookDatabaseUnavailable(WebhookProcessingFailed, DatabaseUnavailable):
    """Applying a webhook failed because the database cannot serve right now: 503, so the provider retries."""

    code = DatabaseUnavailable.code


class WebhookEventNotFound(NotFound):
    code = "webhook_event_not_found"


class BillingItemNotFound(NotFound):
    """The pack or plan asked for at checkout does not exist, is inactive, or is not sold through that provider."""

    code = "item_not_found"


class ProviderNotConfigured(Conflict):
    """The payment provider asked for is not set up in this deployment (no API key, store or price)."""

    code = "provider_not_configured"


class NoBillingAccount(NotFound):
    """The caller has no customer record at the provider yet (nothing bought), so there is no portal to open."""

    code = "no_billing_account"


class AlreadySubscribed(Conflict):
    """The caller already has a live subscription: plan changes go through the provider's portal."""

    code = "already_subscribed"


class TrialDowngradeLimit(Conflict):
    """Seed 001's trial rule: a user in a trial has already moved to a cheaper plan twice, the most it allows."""

    code = "trial_downgrade_limit"


class CheckoutInProgress(Conflict):
    """The same checkout (buyer, item, Idempotency-Key) is being created by another request right now."""

    code = "checkout_in_progress"


class PaymentProviderError(DependencyUnavailable):
    """The payment provider's API refused or failed a request."""

    code = "payment_provider_error"


# --- files (issue 15) -------------------------------------------------------------------------------------------
class QuotaExceeded(TollgateError):
    """The upload would take the caller past their tier's storage quota; `details` carry `used` and `quota`
    (bytes of READY and PENDING files) and what was `requested`."""

    code = "quota_exceeded"


class FileTooLarge(PayloadTooLarge):
    """The declared size is over the largest file the caller's tier may upload; `details` carry the limit."""

    code = "file_too_large"


class ContentTypeNotAllowed(UnsupportedMediaType):
    """The declared content type is not in the deployment's allow-list (FILE_CONTENT_TYPES)."""

    code = "content_type_not_allowed"


class FileNotFound(NotFound):
    code = "file_not_found"


class UploadIncomplete(Conflict):
    """Completion found no object, or one that differs from what was declared (size, type): the file stays
    PENDING; `details` say what was expected and found."""

    code = "upload_incomplete"


class UploadExpired(Conflict):
    """The upload was not completed in time (FILE_UPLOAD_COMPLETE_MINUTES): start a new one."""

    code = "upload_expired"


class RestoreWindowPassed(Conflict):
    """The file was deleted longer ago than FILE_RESTORE_DAYS (or its upload can no longer be completed)."""

    code = "restore_window_passed"


class StorageUnavailable(DependencyUnavailable):
    """The object store (S3) refused or failed a request."""

    code = "storage_unavailable"


# --- auto top-up (issue 17) -------------------------------------------------------------------------------------
class AutoTopUpPackUnavailable(Conflict):
    """The pack named for auto top-up does not exist or is not on sale."""

    code = "auto_topup_pack_unavailable"


class NoDefaultPaymentMethod(Conflict):
    """Auto top-up needs a card saved at Stripe (a customer with an attached payment method) before it can be
    turned on."""

    code = "no_default_payment_method"


class MonthlyCapBelowPackPrice(Conflict):
    """The monthly cap is less than one pack costs: no top-up could ever run; `details` carry both amounts."""

    code = "monthly_cap_below_pack_price"


# --- audit trail and workspace features (issue 14) --------------------------------------------------------------
class FeatureNotFound(NotFound):
    code = "feature_not_found"


class FeatureNameTaken(Conflict):
    """A workspace already has a feature of that name (names are unique inside a workspace)."""

    code = "feature_name_taken"


# --- user management and GDPR (issue 14) ------------------------------------------------------------------------
class UserNotFound(NotFound):
    code = "user_not_found"


class EmailSuppressionNotFound(NotFound):
    """The address is not on the email suppression list."""

    code = "email_suppression_not_found"


class OwnAccessChange(Conflict):
    """An admin may not demote, suspend or erase their own account (another admin must)."""

    code = "cannot_change_own_access"


class LastAdmin(Conflict):
    """The change would leave no active ADMIN."""

    code = "last_admin"


class UserErased(Conflict):
    """The account was erased (GDPR): its role and status can no longer change."""

    code = "user_erased"


class SubscriptionStillBilling(Conflict):
    """A provider may still charge the person (a subscription neither ended nor set to cancel): cancel it first,
    or the next invoice would arrive for someone Tollgate can no longer name."""

    code = "subscription_still_billing"


# --- reports and mail events (issue 14) -------------------------------------------------------------------------
class AnalyticsRangeTooLong(ValidationFailed):
    """An analytics series covers at most ANALYTICS_MAX_DAYS days; `details` carry the limit."""

    code = "range_too_long"


class SnsMessageInvalid(BadRequest):
    """An SNS message that SNS did not sign for the mail events topic (forged, altered, another topic or host)."""

    code = "invalid_sns_message"


class SnsMessageStale(BadRequest):
    """A correctly signed SNS message older than MAIL_EVENT_MAX_AGE_SECONDS."""

    code = "stale_sns_message"


# --- catalogue and reviews (issue 13) ---------------------------------------------------------------------------
class ProductNotFound(NotFound):
    """No such product, or (publicly) one that is not PUBLISHED."""

    code = "product_not_found"


class PriceNotFound(NotFound):
    code = "price_not_found"


class CategoryNotFound(NotFound):
    code = "category_not_found"


class ReviewNotFound(NotFound):
    code = "review_not_found"


class SlugTaken(Conflict):
    """Another product (or category) already has this slug."""

    code = "slug_taken"


class CategoryCycle(Conflict):
    """The move would make a category its own ancestor."""

    code = "category_cycle"


class UnknownCategory(ValidationFailed):
    """A body names a category that does not exist; `details` list the ids."""

    code = "unknown_category"


class DownloadFileNotReady(ValidationFailed):
    """A digital download's file must be an uploaded (READY) file."""

    code = "download_file_not_ready"


class NoActivePrice(Conflict):
    """A product is published only with at least one active price."""

    code = "no_active_price"


class ProductNotEditable(Conflict):
    """The change is not possible in the product's status (a deleted product; a type change after publishing)."""

    code = "product_not_editable"


class AlreadyReviewed(Conflict):
    code = "already_reviewed"


class NotABuyer(Forbidden):
    """Only a user with a completed order containing the product may review it."""

    code = "not_a_buyer"


class OwnReview(Forbidden):
    """A review's author may not vote it helpful."""

    code = "own_review"


# --- order refunds and digital downloads (issue 13) -------------------------------------------------------------
class OrderNotRefundable(Conflict):
    """The order cannot be refunded through Tollgate (not completed, not paid through Stripe); `details` say why."""

    code = "order_not_refundable"


class RefundExceedsPayment(Conflict):
    """Refunded + in flight + asked would pass what the order took; `details.refundable` is what is left."""

    code = "refund_exceeds_payment"


class DownloadNotFound(NotFound):
    """No such item in an order of the caller (another user's order answers the same)."""

    code = "order_item_not_found"


class NotDownloadable(Conflict):
    """The item is not a digital download, its order is not completed, or its product has no file; `details`."""

    code = "not_downloadable"


class DownloadLimitReached(Forbidden):
    code = "download_limit_reached"


class AccessExpired(Forbidden):
    code = "access_expired"


class DownloadRefunded(Forbidden):
    """The order (or item) was refunded: access ended."""

    code = "refunded"


# --- support desk, goodwill credits, system config (issue 14) ---------------------------------------------------
class TicketNotFound(NotFound):
    """No such ticket, or (on the customer's routes) not one of the caller's."""

    code = "ticket_not_found"


class TicketClosed(Conflict):
    """A CLOSED ticket takes no more replies (open a new one)."""

    code = "ticket_closed"


class InvalidTicketTransition(Conflict):
    """The status cannot move that way; `details` carry the current status and the ones it may move to."""

    code = "invalid_ticket_transition"


class InvalidAssignee(ValidationFailed):
    """A ticket is assigned only to an active SUPPORT or ADMIN user."""

    code = "invalid_assignee"


class OverGoodwillCap(Forbidden):
    """A goodwill grant above the `support_goodwill_cap` setting; `details.cap` is the cap."""

    code = "over_goodwill_cap"


class OwnGoodwill(Forbidden):
    """Staff may not grant goodwill credits to their own account."""

    code = "own_goodwill"


class InvalidConfigValue(ValidationFailed):
    """A system_config value that is not of its type, or outside a known key's bounds."""

    code = "invalid_config_value"


# --- cart checkout, orders and discounts (issue 13) --------------------------------------------------------------
class OrderNotFound(NotFound):
    """No such order, or (on the customer's routes) not one of the caller's."""

    code = "order_not_found"


class DiscountNotFound(NotFound):
    code = "discount_not_found"


class DiscountCodeTaken(Conflict):
    """Another discount already has this code (codes are compared without regard to case)."""

    code = "discount_code_taken"


class OutOfStock(Conflict):
    """Tracked stock does not cover the quantity asked; `details` name the item and what is left."""

    code = "out_of_stock"


class DiscountInvalid(ValidationFailed):
    """The discount code cannot apply to this cart; `details.reason` says why."""

    code = "discount_invalid"


class InvalidCart(ValidationFailed):
    """The cart cannot be bought as one checkout (unknown or inactive price, unpublished product, mixed currencies
    or mixed one-time and recurring prices); `details` say which."""

    code = "invalid_cart"
