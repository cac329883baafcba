"""Prompt sets for the benchmarks in bench/: what the clients ask, shared by every side.

`essay`: open-ended essays, most answers run to max_tokens; the answer shares little with
the prompt. `code-edit`: a 30-60 line Python snippet with a small change asked for ("rename X
to Y", "add type hints", "add docstrings") so that most of the answer copies the prompt — the
case that prompt-lookup speculative decoding speeds up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    system: str
    prompts: tuple[str, ...]
    default_max_tokens: int

    def messages(self, prompt: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": prompt}]


TOPICS = (
    "the history of the printing press", "how rivers shape landscapes",
    "the life cycle of stars", "the causes of the French Revolution",
    "how vaccines train the immune system", "the invention of the steam engine",
    "the ecology of coral reefs", "the architecture of Gothic cathedrals",
    "how compilers turn source code into machine code", "the migration of monarch butterflies",
    "the role of bees in agriculture", "the development of the telephone",
    "plate tectonics and earthquakes", "the Silk Road and ancient trade",
    "how the internet routes packets", "the water cycle and climate",
)

LRU_CACHE = '''\
from collections import OrderedDict


class LRUCache:
    def __init__(self, capacity):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._items = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key, default=None):
        if key not in self._items:
            self.misses += 1
            return default
        self._items.move_to_end(key)
        self.hits += 1
        return self._items[key]

    def put(self, key, value):
        if key in self._items:
            self._items.move_to_end(key)
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def resize(self, capacity):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def hit_rate(self):
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self):
        return len(self._items)

    def __contains__(self, key):
        return key in self._items
'''

SALES_REPORT = '''\
import csv
from collections import defaultdict


def load_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def parse_amount(text):
    cleaned = text.replace("$", "").replace(",", "").strip()
    if not cleaned:
        return 0.0
    return float(cleaned)


def totals_by(rows, column):
    totals = defaultdict(float)
    for row in rows:
        totals[row[column]] += parse_amount(row["amount"])
    return dict(totals)


def top_n(totals, n):
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)
    return ranked[:n]


def monthly_growth(rows):
    by_month = totals_by(rows, "month")
    months = sorted(by_month)
    growth = {}
    for previous, current in zip(months, months[1:]):
        before = by_month[previous]
        if before == 0:
            growth[current] = None
        else:
            growth[current] = (by_month[current] - before) / before
    return growth


def summary(path, n=5):
    rows = load_rows(path)
    return {
        "rows": len(rows),
        "total": sum(parse_amount(r["amount"]) for r in rows),
        "top_regions": top_n(totals_by(rows, "region"), n),
        "top_products": top_n(totals_by(rows, "product"), n),
        "growth": monthly_growth(rows),
    }
'''

RETRY = '''\
import functools
import logging
import random
import time

log = logging.getLogger(__name__)


class RetryError(Exception):
    def __init__(self, attempts, last_error):
        super().__init__(f"gave up after {attempts} attempts: {last_error}")
        self.attempts = attempts
        self.last_error = last_error


def backoff_delays(base, factor, limit, attempts):
    delay = base
    for _ in range(attempts):
        yield min(delay, limit) * random.uniform(0.5, 1.0)
        delay *= factor


def retry(attempts=3, base=0.1, factor=2.0, limit=5.0, retry_on=(ConnectionError,)):
    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            last_error = None
            delays = backoff_delays(base, factor, limit, attempts - 1)
            for attempt in range(1, attempts + 1):
                try:
                    return func(*args, **kwargs)
                except retry_on as exc:
                    last_error = exc
                    log.warning("%s failed (attempt %d): %s", func.__name__, attempt, exc)
                    delay = next(delays, None)
                    if delay is None:
                        break
                    time.sleep(delay)
            raise RetryError(attempts, last_error)
        return wrapper
    return decorator


@retry(attempts=5, retry_on=(ConnectionError, TimeoutError))
def fetch_status(client, url):
    response = client.get(url, timeout=2.0)
    if response.status_code >= 500:
        raise ConnectionError(f"server error {response.status_code}")
    return response.status_code
'''

WORD_COUNT = '''\
import re
import string
from collections import Counter

STOP_WORDS = {"a", "an", "and", "the", "of", "to", "in", "is", "it", "that", "for", "on"}
WORD = re.compile(r"[a-z']+")


def normalize(text):
    text = text.lower()
    return text.translate(str.maketrans("", "", string.digits))


def tokenize(text):
    return [w.strip("'") for w in WORD.findall(normalize(text)) if w.strip("'")]


def count_words(lines, skip_stop_words=True):
    counts = Counter()
    for line in lines:
        for word in tokenize(line):
            if skip_stop_words and word in STOP_WORDS:
                continue
            counts[word] += 1
    return counts


def most_common(counts, n=10, min_length=3):
    kept = [(w, c) for w, c in counts.items() if len(w) >= min_length]
    kept.sort(key=lambda pair: (-pair[1], pair[0]))
    return kept[:n]


def report(path, n=10):
    with open(path, encoding="utf-8") as f:
        counts = count_words(f)
    total = sum(counts.values())
    lines = [f"{total} words, {len(counts)} distinct"]
    for word, count in most_common(counts, n):
        share = 100.0 * count / total
        lines.append(f"{word:<15} {count:>6} {share:5.1f}%")
    return "\\n".join(lines)


if __name__ == "__main__":
    import sys
    print(report(sys.argv[1]))
'''

BANK_ACCOUNT = '''\
from datetime import datetime


class InsufficientFunds(Exception):
    pass


class Account:
    def __init__(self, owner, balance=0, overdraft_limit=0):
        self.owner = owner
        self.balance = balance
        self.overdraft_limit = overdraft_limit
        self.history = []

    def _record(self, kind, amount):
        self.history.append((datetime.now(), kind, amount, self.balance))

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("deposit must be positive")
        self.balance += amount
        self._record("deposit", amount)
        return self.balance

    def withdraw(self, amount):
        if amount <= 0:
            raise ValueError("withdrawal must be positive")
        if self.balance - amount < -self.overdraft_limit:
            raise InsufficientFunds(f"{self.owner} cannot withdraw {amount}")
        self.balance -= amount
        self._record("withdraw", amount)
        return self.balance

    def transfer(self, other, amount):
        self.withdraw(amount)
        try:
            other.deposit(amount)
        except ValueError:
            self.deposit(amount)
            raise
        return self.balance, other.balance

    def statement(self, limit=10):
        rows = []
        for when, kind, amount, balance in self.history[-limit:]:
            stamp = when.strftime("%Y-%m-%d %H:%M")
            rows.append(f"{stamp}  {kind:<8} {amount:>10.2f} {balance:>10.2f}")
        return "\\n".join(rows)
'''

INI_CONFIG = '''\
import os


class ConfigError(Exception):
    pass


def parse_value(raw):
    value = raw.strip()
    if value.lower() in ("true", "yes", "on"):
        return True
    if value.lower() in ("false", "no", "off"):
        return False
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value.strip('"')


def parse_config(text):
    sections = {"default": {}}
    current = sections["default"]
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            current = sections.setdefault(name, {})
        elif "=" in line:
            key, raw = line.split("=", 1)
            current[key.strip()] = parse_value(raw)
        else:
            raise ConfigError(f"line {number}: expected key = value, got {line!r}")
    return sections


def apply_env(sections, prefix="APP_"):
    for key, raw in os.environ.items():
        if not key.startswith(prefix):
            continue
        section, _, name = key[len(prefix):].lower().partition("__")
        if not name:
            section, name = "default", section
        sections.setdefault(section, {})[name] = parse_value(raw)
    return sections


def load_config(path, prefix="APP_"):
    with open(path, encoding="utf-8") as f:
        return apply_env(parse_config(f.read()), prefix)
'''

SORTED_LIST = '''\
class SortedList:
    def __init__(self, items=()):
        self._items = sorted(items)

    def _left(self, value):
        lo, hi = 0, len(self._items)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._items[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _right(self, value):
        lo, hi = 0, len(self._items)
        while lo < hi:
            mid = (lo + hi) // 2
            if value < self._items[mid]:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def add(self, value):
        self._items.insert(self._right(value), value)

    def remove(self, value):
        index = self._left(value)
        if index == len(self._items) or self._items[index] != value:
            raise ValueError(f"{value!r} not in list")
        del self._items[index]

    def count(self, value):
        return self._right(value) - self._left(value)

    def between(self, low, high):
        return self._items[self._left(low):self._right(high)]

    def __contains__(self, value):
        index = self._left(value)
        return index < len(self._items) and self._items[index] == value

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self._items)
'''

TOKEN_BUCKET = '''\
import threading
import time


class TokenBucket:
    def __init__(self, rate, capacity, clock=time.monotonic):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self):
        now = self._clock()
        elapsed = now - self._updated
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now

    def try_acquire(self, tokens=1):
        with self._lock:
            self._refill()
            if self._tokens >= tokens:
                self._tokens -= tokens
                return True
            return False

    def wait_time(self, tokens=1):
        with self._lock:
            self._refill()
            missing = tokens - self._tokens
            return max(0.0, missing / self.rate)

    def acquire(self, tokens=1, timeout=None):
        deadline = None if timeout is None else self._clock() + timeout
        while not self.try_acquire(tokens):
            delay = self.wait_time(tokens)
            if deadline is not None and self._clock() + delay > deadline:
                return False
            time.sleep(delay)
        return True


class RateLimiter:
    def __init__(self, rate, capacity):
        self._buckets = {}
        self._rate = rate
        self._capacity = capacity

    def allow(self, key):
        bucket = self._buckets.setdefault(key, TokenBucket(self._rate, self._capacity))
        return bucket.try_acquire()
'''

MARKDOWN_TABLE = '''\
def column_widths(header, rows):
    widths = [len(str(cell)) for cell in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(str(cell)))
    return widths


def is_number(value):
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float))


def format_cell(value, precision):
    if isinstance(value, float):
        return f"{value:.{precision}f}"
    if value is None:
        return ""
    return str(value).replace("|", "\\\\|")


def separator(widths, numeric):
    parts = []
    for width, right in zip(widths, numeric):
        dashes = "-" * max(3, width)
        parts.append(dashes[:-1] + ":" if right else dashes)
    return "| " + " | ".join(parts) + " |"


def render_table(header, rows, precision=2):
    cells = [[format_cell(v, precision) for v in row] for row in rows]
    widths = column_widths(header, cells)
    numeric = [bool(rows) and all(is_number(r[i]) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"]
    lines.append(separator(widths, numeric))
    for row, raw in zip(cells, rows):
        padded = []
        for cell, width, value in zip(row, widths, raw):
            padded.append(cell.rjust(width) if is_number(value) else cell.ljust(width))
        lines.append("| " + " | ".join(padded) + " |")
    return "\\n".join(lines)


if __name__ == "__main__":
    print(render_table(["name", "qty", "price"], [["apple", 3, 0.5], ["pear", 12, 0.25]]))
'''

INVENTORY = '''\
class Item:
    def __init__(self, sku, name, quantity, reorder_level, unit_cost):
        self.sku = sku
        self.name = name
        self.quantity = quantity
        self.reorder_level = reorder_level
        self.unit_cost = unit_cost

    def value(self):
        return self.quantity * self.unit_cost

    def label(self):
        return "%s (%s): %d in stock" % (self.name, self.sku, self.quantity)


class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, item):
        if item.sku in self.items:
            raise KeyError("duplicate sku %s" % item.sku)
        self.items[item.sku] = item

    def remove(self, sku, quantity):
        item = self.items[sku]
        if quantity > item.quantity:
            raise ValueError("only %d of %s left" % (item.quantity, item.name))
        item.quantity -= quantity
        return item.quantity

    def restock(self, sku, quantity):
        item = self.items[sku]
        item.quantity += quantity
        return "restocked %s: now %d" % (item.name, item.quantity)

    def to_reorder(self):
        return [i for i in self.items.values() if i.quantity <= i.reorder_level]

    def total_value(self):
        return sum(item.value() for item in self.items.values())

    def report(self):
        lines = ["Inventory of %d items, value %.2f" % (len(self.items), self.total_value())]
        for item in sorted(self.items.values(), key=lambda i: i.name):
            flag = " REORDER" if item in self.to_reorder() else ""
            lines.append("  %-20s %5d  %8.2f%s" % (item.name, item.quantity, item.value(), flag))
        return "\\n".join(lines)
'''

SHORTEST_PATH = '''\
from collections import deque


def build_graph(edges, directed=False):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
        if not directed:
            graph[b].append(a)
    return graph


def shortest_path(graph, start, goal):
    if start not in graph or goal not in graph:
        return None
    previous = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for neighbour in graph[node]:
            if neighbour not in previous:
                previous[neighbour] = node
                queue.append(neighbour)
    if goal not in previous:
        return None
    path = []
    node = goal
    while node is not None:
        path.append(node)
        node = previous[node]
    return path[::-1]


def connected_components(graph):
    seen = set()
    components = []
    for start in graph:
        if start in seen:
            continue
        component = []
        queue = deque([start])
        seen.add(start)
        while queue:
            node = queue.popleft()
            component.append(node)
            for neighbour in graph[node]:
                if neighbour not in seen:
                    seen.add(neighbour)
                    queue.append(neighbour)
        components.append(sorted(component))
    return components
'''

LOG_STATS = '''\
import re
from collections import Counter, defaultdict
from datetime import datetime

LINE = re.compile(
    r'(?P<ip>\\S+) \\S+ \\S+ \\[(?P<time>[^\\]]+)\\] "(?P<method>\\S+) (?P<path>\\S+) [^"]*" '
    r"(?P<status>\\d{3}) (?P<size>\\d+|-) (?P<ms>\\d+)"
)


def parse_line(line):
    match = LINE.match(line)
    if match is None:
        return None
    record = match.groupdict()
    record["time"] = datetime.strptime(record["time"], "%d/%b/%Y:%H:%M:%S %z")
    record["status"] = int(record["status"])
    record["size"] = 0 if record["size"] == "-" else int(record["size"])
    record["ms"] = int(record["ms"])
    return record


def percentile(values, q):
    ordered = sorted(values)
    if not ordered:
        return 0
    index = min(len(ordered) - 1, int(q * len(ordered)))
    return ordered[index]


def summarize(lines):
    statuses = Counter()
    latencies = defaultdict(list)
    bad = 0
    for line in lines:
        record = parse_line(line)
        if record is None:
            bad += 1
            continue
        statuses[record["status"] // 100 * 100] += 1
        latencies[record["path"]].append(record["ms"])
    slowest = sorted(latencies, key=lambda p: percentile(latencies[p], 0.95), reverse=True)
    return {
        "unparsed": bad,
        "statuses": dict(statuses),
        "slowest_paths": [(p, percentile(latencies[p], 0.95)) for p in slowest[:5]],
    }
'''

# (snippet, the change asked for): each change is small, so most of the answer is a copy.
CODE_EDITS = (
    (LRU_CACHE, "Rename the attribute and parameter `capacity` to `max_entries` everywhere"),
    (SALES_REPORT, "Add type hints to every function"),
    (RETRY, "Add a one-line docstring to each function"),
    (WORD_COUNT, "Rename the variable `counts` to `frequencies` everywhere"),
    (BANK_ACCOUNT, "Add type hints to every method"),
    (INI_CONFIG, "Add a one-line docstring to each function"),
    (SORTED_LIST, "Rename the local variables `lo` to `low` and `hi` to `high`"),
    (TOKEN_BUCKET, "Add type hints to every method"),
    (MARKDOWN_TABLE, "Add a one-line docstring to each function"),
    (INVENTORY, "Replace every %-formatting expression with an f-string"),
    (SHORTEST_PATH, "Rename the parameter `graph` to `adjacency` everywhere"),
    (LOG_STATS, "Add type hints to every function"),
)


def code_edit_prompt(snippet: str, change: str) -> str:
    return (f"{change} in this code, and change nothing else. Return the whole code in one "
            f"Python code block.\n\n```python\n{snippet}```")


WORKLOADS = {
    "essay": Workload("essay", "You are a helpful assistant.",
                      tuple(f"Write a detailed essay about {t}." for t in TOPICS), 64),
    "code-edit": Workload("code-edit", "You are a helpful coding assistant.",
                          tuple(code_edit_prompt(s, c) for s, c in CODE_EDITS), 256),
}
