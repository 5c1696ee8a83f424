"""``GET /metrics``: the Prometheus text exposition format, kept by hand (updated on the event loop only).

Requests by route and status, request latency, texts encoded (and truncated), batch sizes (texts and requests per
model call), model seconds per batch; the app adds queue depth, index size, uptime and the process id as gauges.
"""

from collections import Counter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """A Prometheus histogram: cumulative buckets, sum and count."""

    def __init__(self, buckets: tuple):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0
        self.max = 0.0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.sum += value
        self.count += 1
        self.max = max(self.max, value)

    def lines(self, name: str, labels: dict) -> list[str]:
        out = [f"{name}_bucket{_labels({**labels, 'le': _num(b)})} {c}" for b, c in zip(self.buckets, self.counts)]
        out.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {self.count}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc.items()) + "}"


class Metrics:
    """What ``GET /metrics`` reports."""

    def __init__(self):
        self.requests: Counter = Counter()  # (route, status) -> n
        self.latency: dict[str, Histogram] = {}
        self.texts: Counter = Counter()  # op -> texts run through the model
        self.truncated = 0  # encoded texts cut at the model's max_len
        self.batch_texts: dict[str, Histogram] = {}
        self.batch_requests: dict[str, Histogram] = {}
        self.batch_seconds: dict[str, Histogram] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] += 1
        self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, op: str, texts: int, requests: int, seconds: float) -> None:
        self.texts[op] += texts
        self.batch_texts.setdefault(op, Histogram(SIZE_BUCKETS)).observe(texts)
        self.batch_requests.setdefault(op, Histogram(SIZE_BUCKETS)).observe(requests)
        self.batch_seconds.setdefault(op, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self, gauges: dict[str, tuple[str, dict]]) -> str:
        """The exposition text; ``gauges``: name -> (help, {label tuple or (): value})."""
        out: list[str] = []

        def family(name, kind, help_, lines):
            out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *lines])

        family("qingbert_requests_total", "counter", "HTTP requests by route and status code.",
               [f"{'qingbert_requests_total'}{_labels({'route': r, 'status': s})} {n}"
                for (r, s), n in sorted(self.requests.items())])
        family("qingbert_request_duration_seconds", "histogram", "HTTP request latency by route.",
               [ln for r, h in sorted(self.latency.items())
                for ln in h.lines("qingbert_request_duration_seconds", {"route": r})])
        family("qingbert_texts_total", "counter", "Texts run through the model, by operation.",
               [f"qingbert_texts_total{_labels({'op': op})} {n}" for op, n in sorted(self.texts.items())])
        family("qingbert_texts_truncated_total", "counter", "Encoded texts longer than max_len tokens, cut to it.",
               [f"qingbert_texts_truncated_total {self.truncated}"])
        for name, what, hists in (("qingbert_batch_texts", "Texts per model call (micro-batch size).",
                                   self.batch_texts),
                                  ("qingbert_batch_requests", "Requests merged into one model call.",
                                   self.batch_requests),
                                  ("qingbert_batch_duration_seconds", "Model seconds per micro-batch.",
                                   self.batch_seconds)):
            family(name, "histogram", what, [ln for op, h in sorted(hists.items()) for ln in h.lines(name, {"op": op})])
        family("qingbert_batch_requests_max", "gauge", "Most requests merged into one model call so far.",
               [f"qingbert_batch_requests_max{_labels({'op': op})} {_num(h.max)}"
                for op, h in sorted(self.batch_requests.items())])
        for name, (help_, values) in gauges.items():
            family(name, "gauge", help_, [f"{name}{_labels(dict(lab))} {_num(v)}" for lab, v in values.items()])
        return "\n".join(out) + "\n"


__all__ = ["LATENCY_BUCKETS", "SIZE_BUCKETS", "Histogram", "Metrics"]
