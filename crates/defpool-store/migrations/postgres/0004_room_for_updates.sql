-- Room on each page for the next version of its rows. Every batch of a minute updates the same
-- work rows (a worker's row of that minute) and the same reject and coin rows. PostgreSQL can
-- then write the new version on the row's own page and skip the index (a HOT update: no key
-- column changes) only if the page has space; with full pages every update also inserts an
-- entry into the six-column key index of `work`. Measured with the server's ingest benchmark
-- (docs/benchmarks.md): one proxy 71k → 100–114k records/s, four proxies 80k → 124–136k.
-- The price: work pages are filled only half by inserts, so the table takes up to twice the
-- disk of packed pages. SQLite has no such setting (it rewrites a row in place in its B-tree).
ALTER TABLE work SET (fillfactor = 50);
ALTER TABLE worker_rejects SET (fillfactor = 70);
ALTER TABLE coin_minute SET (fillfactor = 50);
