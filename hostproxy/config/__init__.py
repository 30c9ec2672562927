"""hostproxy's config: Linkerd 1's ``linkerd.yaml`` schema, loaded and validated whole.

``load_config(path_or_text, source=None) -> Config`` raises :class:`ConfigError` (``.errors``) listing
every problem with its file line and config path; ``Config.to_json()`` is ``/config.json``;
``client_params_for``/``service_params_for`` resolve per-name parameters. The plugin registry (kinds,
config types, lazy factories, implemented/planned status) is :mod:`hostproxy.config.registry`.
This package imports neither trio nor the runtime.
"""

from hostproxy.config.errors import ConfigError, ConfigIssue
from hostproxy.config.model import (
    ClientParams,
    Config,
    H2ClientParams,
    H2ServiceParams,
    RouterConfig,
    ServerConfig,
    ServiceParams,
)
from hostproxy.config.params import client_params_for, match_prefix, service_params_for
from hostproxy.config.registry import IMPLEMENTED, REGISTRY, PluginSpec, load_factory
from hostproxy.config.validate import load_config, validate_text

__all__ = [
    "IMPLEMENTED",
    "REGISTRY",
    "ClientParams",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "H2ClientParams",
    "H2ServiceParams",
    "PluginSpec",
    "RouterConfig",
    "ServerConfig",
    "ServiceParams",
    "client_params_for",
    "load_config",
    "load_factory",
    "match_prefix",
    "service_params_for",
    "validate_text",
]
