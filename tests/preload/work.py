# python3 under the preload: json, re and an in-memory sqlite3 database.
import collections
import json
import re
import sqlite3

data = [{"id": i, "name": f"item{i}", "tags": ["a" * (i % 7), "b" * (i % 5)]} for i in range(20000)]
text = json.dumps(data)
assert json.loads(text) == data
ids = re.findall(r'"name": "item(\d+)"', text)
assert len(ids) == 20000 and ids[123] == "123"
assert re.sub(r"item(\d)", r"x\1", "item1 item22") == "x1 x22"

db = sqlite3.connect(":memory:")
db.execute("create table t(k integer primary key, v text, tags text)")
db.executemany("insert into t values (?, ?, ?)", ((d["id"], d["name"], ",".join(d["tags"])) for d in data))
db.execute("create index t_v on t(v)")
(n,) = db.execute("select count(*) from t where v like 'item1%'").fetchone()
assert n == 11111, n
counts = collections.Counter(len(t) for d in data for t in d["tags"])
assert sum(counts.values()) == 40000
print("python ok", len(text), n)
