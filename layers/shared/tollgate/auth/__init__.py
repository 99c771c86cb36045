"""Sign-in primitives: password hashing, one-time secrets, access tokens, Clerk tokens, OAuth providers and
failed-login throttling. Services compose them; nothing here knows HTTP or Lambda."""
