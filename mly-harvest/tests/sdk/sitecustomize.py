"""Points the official Mapillary SDK at the simulator without changing it.

Python imports `sitecustomize` at start-up from the path; tests/sdk_conformance.rs puts this
directory on PYTHONPATH and sets MLY_SIM_URL. Every request `requests` sends to one of the two API
hosts is sent to the simulator instead, path and query unchanged. Nothing else is touched: the SDK
builds its URLs, headers and tokens exactly as it does against the live service.
"""

import os

_SIM = os.environ.get("MLY_SIM_URL", "").rstrip("/")
_HOSTS = ("https://graph.mapillary.com", "https://tiles.mapillary.com")

if _SIM:
    try:
        import requests.adapters
    except ImportError:  # not the SDK's environment: nothing to redirect
        pass
    else:
        _send = requests.adapters.HTTPAdapter.send

        def _redirecting_send(self, request, *args, **kwargs):
            for host in _HOSTS:
                if request.url.startswith(host):
                    request.url = _SIM + request.url[len(host):]
                    break
            return _send(self, request, *args, **kwargs)

        requests.adapters.HTTPAdapter.send = _redirecting_send
