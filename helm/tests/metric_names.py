"""Prints, as JSON, every chatpipe series name the alerts (PrometheusRule) and the Grafana
dashboard use, with where each is used: {"chatpipe_sink_retries_total": ["alert …", …]}.
tests/tests/helm_chart.rs compares them with the /metrics of a running stack.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chartlib  # noqa: E402

if __name__ == "__main__":
    print(json.dumps(chartlib.metric_usages(chartlib.everything_enabled()), indent=2, sort_keys=True))
