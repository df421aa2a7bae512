-- hyperfill queue schema, version 3. Runs on the TARGET (see 0001).
--
-- rows_copied counts logical rows from this version on: for a compressed
-- chunk copied as its batches, the rows those batches hold (the sum of their
-- _ts_meta_count) plus the chunk's uncompressed rows, never the number of
-- batches. (Tasks completed by an older hyperfill keep the figure they were
-- recorded with.)
--
-- batches_copied: how many compressed batches (rows of the compressed chunk
-- table) a task copied as they are; NULL when it copied none.
--
-- verify_details: the structured outcome of the last verification that found
-- a difference: {"source_rows", "target_rows", "differences": [{"column",
-- "aggregate", "source", "target"}]}; NULL otherwise.

ALTER TABLE __hyperfill.task ADD COLUMN batches_copied bigint;
ALTER TABLE __hyperfill.task ADD COLUMN verify_details jsonb;
