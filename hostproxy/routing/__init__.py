"""Routing logic, pure (no sockets, no trio): identifiers turn a request into a service name, the
context module reads and writes the ``l5d-*`` headers and applies the address-override policy, and the
binder caches bound trees per (local dtab, service name) with bounded, invalidatable caches."""

from hostproxy.routing.binder import (
    Binder,
    BindingCacheConfig,
    BindingCacheConfigError,
    BindOutcome,
    BoundedLru,
    ClientCache,
)
from hostproxy.routing.context import (
    AddressOverridePolicy,
    AddressOverrideRefused,
    DtabParseCache,
    HeaderEdits,
    InboundContext,
    RequestDtabError,
    clear_response_context,
    downstream_headers,
    encode_l5d_err,
    is_loopback_bind,
    raw_address_ids,
    read_inbound,
    read_request_dtab,
    strip_inbound,
)
from hostproxy.routing.identifiers import (
    Identified,
    Identifier,
    IdentifierChain,
    IdentifierConfigError,
    Unidentified,
    build_identifier,
    build_identifiers,
    unknown_destination_message,
)

__all__ = [
    "AddressOverridePolicy",
    "AddressOverrideRefused",
    "BindOutcome",
    "Binder",
    "BindingCacheConfig",
    "BindingCacheConfigError",
    "BoundedLru",
    "ClientCache",
    "DtabParseCache",
    "HeaderEdits",
    "Identified",
    "Identifier",
    "IdentifierChain",
    "IdentifierConfigError",
    "InboundContext",
    "RequestDtabError",
    "Unidentified",
    "build_identifier",
    "build_identifiers",
    "clear_response_context",
    "downstream_headers",
    "encode_l5d_err",
    "is_loopback_bind",
    "raw_address_ids",
    "read_inbound",
    "read_request_dtab",
    "strip_inbound",
    "unknown_destination_message",
]
