"""Settings, read once from the environment (and an optional ``.env``): the settings themselves
(``config``), one value's checks (``values``), ranges (``bounds``), the date and duration reader
(``timeargs``), the MessageMedia accounts (``accounts``) and the store's address (``store_url``)."""

from sfsync.settings.config import Settings, environment, load_settings, missing_variables, require

__all__ = ["Settings", "environment", "load_settings", "missing_variables", "require"]
