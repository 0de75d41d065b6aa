-- sqlite3 under the preload: a table, 20000 rows, an index, aggregates and sorting.
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, v REAL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
INSERT INTO t SELECT x, 'name' || x, x * 1.5 FROM c;
CREATE INDEX t_name ON t(name);
SELECT count(*) || '|' FROM t WHERE name LIKE 'name1%';
SELECT group_concat(name, ',') FROM (SELECT name FROM t ORDER BY v DESC LIMIT 3);
UPDATE t SET name = upper(name) WHERE id % 2 = 0;
DELETE FROM t WHERE id % 3 = 0;
SELECT count(*) FROM t;
VACUUM;
