"""``runmeter proxy``: an OpenAI-compatible pass-through that records runs for any client language.

Point an SDK's base URL at :attr:`Proxy.base_url` (or the CLI's printed URL); every call under
``/v1/`` is relayed byte for byte and the same taps as the in-process recorder read the bytes.
"""

from collector.proxy.app import DEFAULT_UPSTREAM, Proxy, ProxyConfig, ProxyServer, serve_forever
from collector.proxy.relay import DECODABLE, Relay, RelayOptions

__all__ = ["DECODABLE", "DEFAULT_UPSTREAM", "Proxy", "ProxyConfig", "ProxyServer", "Relay", "RelayOptions",
           "serve_forever"]
