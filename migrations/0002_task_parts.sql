-- hyperfill queue schema, version 2. Runs on the TARGET (see 0001).
--
-- A chunk far larger than the others is staged as several tasks, one per
-- time sub-range ("parts", numbered from 1); a chunk copied in one task has
-- part 0. A chunk's tasks are either part 0 alone or parts 1..n.

ALTER TABLE __hyperfill.task ADD COLUMN part integer NOT NULL DEFAULT 0;
ALTER TABLE __hyperfill.task DROP CONSTRAINT task_chunk_schema_chunk_name_key;
ALTER TABLE __hyperfill.task ADD CONSTRAINT task_chunk_part_key UNIQUE (chunk_schema, chunk_name, part);
