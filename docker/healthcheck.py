"""Container health check: exit 0 when the service's /readyz answers 200, 1 otherwise (stdlib only)."""

import os
import sys
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('HASTE_PORT', '8000')}/readyz"
try:
    with urllib.request.urlopen(url, timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    print(f"not ready: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
