-- hyperfill queue schema, version 5. Runs on the TARGET (see 0001).
--
-- source_compressed_schema/_name: the relation holding the source chunk's
--     compressed batches when `stage` saw it, NULL when the chunk was not
--     compressed then (or the queue was staged by an earlier hyperfill).
--     `copy` reads that relation's columns and prepares its COPY in the
--     first round trip to the source, on the guess that it is still the
--     chunk's; when the chunk's state says otherwise, the guess is dropped
--     and the relation is read again (one more round trip).

ALTER TABLE __hyperfill.task ADD COLUMN source_compressed_schema text;
ALTER TABLE __hyperfill.task ADD COLUMN source_compressed_name text;
