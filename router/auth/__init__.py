"""Who may call the router: client API keys, the admin token, rate limits, the audit log.

``principal`` authenticates a caller; ``keys`` stores and caches keys; ``limits`` keeps
each key within its requests and tokens per minute; ``admin_token`` makes a newcomer's
admin token; ``audit`` records every admin action. Depends on ``router.config``,
``router.errors`` and the database, never on the API layer.
"""
