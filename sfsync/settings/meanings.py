"""What each setting means, in an admin's words: the one place the configuration reference
(``docs/reference/settings.md``) takes its text from.

The names, defaults, ranges and secrecy come from the settings themselves (``sfsync.ops.docref``
reads them); only the meaning is written here. ``tests/test_docref.py`` fails when a variable sfsync
reads has no meaning here, or a meaning names a variable sfsync does not read. Pure data: no imports,
so the settings can move without touching this file.
"""

from __future__ import annotations

# SFSYNC_* variable -> what it means (Markdown, one line).
MEANINGS: dict[str, str] = {
    # MessageMedia
    "SFSYNC_MM_BASE_URL": "MessageMedia API host. `https://au.app.api.sinch.com` and "
                          "`https://eu.app.api.sinch.com` work too.",
    "SFSYNC_MM_API_KEY": "MessageMedia API key (Basic authentication). Required to poll.",
    "SFSYNC_MM_API_SECRET": "MessageMedia API secret. Required to poll.",
    "SFSYNC_MM_ACCOUNT": "A sub-account id, sent as the `Account` header. Not with `SFSYNC_MM_ACCOUNTS`.",
    "SFSYNC_MM_ACCOUNTS": "Several accounts, each polled in turn (see [Several accounts](../accounts.md)). "
                          "Not with `SFSYNC_MM_ACCOUNT`.",
    # Salesforce log-in
    "SFSYNC_SF_LOGIN_URL": "Your My Domain URL, e.g. `https://acme.my.salesforce.com` (the token endpoint).",
    "SFSYNC_SF_AUDIENCE": "JWT bearer `aud`. Leave empty unless `sfsync doctor` names a value: it is derived from "
                          "the login URL (sandbox or production). Never the My Domain URL.",
    "SFSYNC_SF_CLIENT_ID": "Connected app consumer key (client credentials or JWT bearer).",
    "SFSYNC_SF_CLIENT_SECRET": "Connected app consumer secret (client credentials).",
    "SFSYNC_SF_USERNAME": "Integration user (JWT bearer, with `SFSYNC_SF_PRIVATE_KEY_FILE`).",
    "SFSYNC_SF_PRIVATE_KEY_FILE": "PEM RSA private key whose certificate is on the connected app (JWT bearer).",
    "SFSYNC_SF_INSTANCE_URL": "With `SFSYNC_SF_ACCESS_TOKEN`: the instance that issued the token.",
    "SFSYNC_SF_ACCESS_TOKEN": "An access token you already have (no log-in; short-lived).",
    "SFSYNC_SF_API_VERSION": "Salesforce REST API version.",
    # Task fields
    "SFSYNC_FIELD_STATUS": "Task field for the SMS Status label (text, 40).",
    "SFSYNC_FIELD_CODE": "Task field for the SMS Status Code (text, 10).",
    "SFSYNC_FIELD_MESSAGE_ID": "Task field holding MessageMedia's message id (mark it External ID).",
    "SFSYNC_FIELD_UPDATED": "Optional date-time field for the status's event time.",
    "SFSYNC_METADATA_TASK_KEY": "Message metadata key carrying the Task Id.",
    "SFSYNC_TRUNCATE_FIELDS": "Fields (status or code) whose values may be cut to the field's length; "
                              "otherwise a value too long is a dead letter.",
    # Runtime
    "SFSYNC_CA_BUNDLE": "PEM bundle to trust (a corporate proxy, the simulators). A certificate it does not "
                        "vouch for is exit 3.",
    "SFSYNC_STATE_DIR": "Folder of the SQLite store `sfsync.db` and the lock file.",
    "SFSYNC_STORE_URL": "Where the store lives: `postgresql://user@host:port/db` (libpq options in the query) "
                        "or `sqlite:///path`. A password in the URL is refused.",
    "SFSYNC_STORE_PASSWORD": "PostgreSQL password (else `PGPASSWORD` or `~/.pgpass`).",
    "SFSYNC_STORE_PASSWORD_FILE": "A file whose first line is the PostgreSQL password (a mounted Secret). "
                                  "Not with `SFSYNC_STORE_PASSWORD`.",
    "SFSYNC_API_BUDGET_PCT": "Stop writing when Salesforce API usage passes this share of the daily "
                             "allocation (exit 5).",
    "SFSYNC_WAIT_MAX_AGE_HOURS": "How long a report waits for its Task before it becomes a dead letter.",
    "SFSYNC_HTTP_TIMEOUT": "Read timeout of every request, in seconds (connect: 10 s).",
    "SFSYNC_LEASE_SECONDS": "PostgreSQL replicas: a lease or claim not renewed for this long is taken over. "
                            "Keep it well above `SFSYNC_HTTP_TIMEOUT`.",
    "SFSYNC_RETRY_ATTEMPTS": "Attempts per remote call for transient failures.",
    "SFSYNC_RETRY_MAX_SECONDS": "Total time per remote call across retries, waits included.",
    "SFSYNC_CONFIRM_WAIT_SECONDS": "How long a poll checks again while MessageMedia still serves reports "
                                   "already confirmed (else exit 8, `confirm_pending`).",
    "SFSYNC_SF_CONCURRENCY": "Salesforce look-ups or writes in flight at once.",
    "SFSYNC_LOG_FORMAT": "`json` (one object a line), `text`, or `auto` (text on a terminal).",
    # Push mode
    "SFSYNC_PUSH_SECRET_HEADER": "Push mode: the header carrying the shared secret.",
    "SFSYNC_PUSH_SECRET": "Push mode: the shared secret every push must carry (compared in constant time).",
    "SFSYNC_PUSH_PUBLIC_KEY_FILE": "Push mode: MessageMedia's signing public key(s), as "
                                   "`sfsync webhooks signing-key` writes them.",
    "SFSYNC_PUSH_AUTH_MODE": "Push mode with both set: `all` must pass, or `any` one.",
    "SFSYNC_PUSH_MAX_SKEW_SECONDS": "Push mode: how far a signed push's `Date` may be from our clock.",
    "SFSYNC_PUSH_MAX_BODY_BYTES": "Push mode: larger bodies are answered 413.",
}

# Variables read outside the settings table: variable -> (module that reads it, default, form, meaning).
OTHER_VARIABLES: dict[str, tuple[str, str, str, str]] = {
    "SFSYNC_CODE_MAP": ("sfsync.domain.codes", "the bundled map", "path to a TOML file",
                        "Another code map, in the format of `config/status_codes.toml`."),
    "SFSYNC_MM_ACCOUNT_<ID>_API_KEY": ("sfsync.settings.accounts", "", "visible ASCII, no spaces",
                                       "A listed account's own API key (`<ID>` upper-cased, other characters "
                                       "as `_`). Without it the account is a sub-account of `SFSYNC_MM_API_KEY`."),
    "SFSYNC_MM_ACCOUNT_<ID>_API_SECRET": ("sfsync.settings.accounts", "", "visible ASCII, no spaces",
                                          "That account's API secret: both or neither."),
}

# Defaults that are computed, or empty with a meaning: variable -> the default as the reference shows it
# (Markdown; other defaults are read from the settings and shown as code).
DEFAULTS_SHOWN: dict[str, str] = {
    "SFSYNC_SF_AUDIENCE": "from the login URL",
    "SFSYNC_STORE_URL": "SQLite in `SFSYNC_STATE_DIR`",
    "SFSYNC_CA_BUNDLE": "system trust store",
    "SFSYNC_MM_API_KEY": "required",
    "SFSYNC_MM_API_SECRET": "required",
}

# The kind of a setting (how sfsync.settings.config reads it) -> the values it accepts. Numbers show their range.
KIND_FORMS: dict[str, str] = {
    "url": "an `https://` URL, no user or password",
    "header_str": "visible ASCII, no spaces",
    "header_secret": "visible ASCII, no spaces",
    "accounts": "account ids, comma-separated",
    "str": "text",
    "secret": "text",
    "version": "like `59.0`",
    "field": "a field API name",
    "fields": "field API names, comma-separated",
    "ca_bundle": "path to a PEM file",
    "path": "a folder",
    "file": "path to a file",
    "log_format": "`auto`, `json` or `text`",
    "header": "an HTTP header name",
    "auth_mode": "`all` or `any`",
}
