-- min_server: 21.3
--
-- Bloom-filter skip indexes for the two event lookups the sorting key does not lead
-- with: by token fingerprint (token_reuse forensics, ReadEvents' key filter) and by
-- route. Only for servers that have skip indexes without experimental settings and
-- ADD INDEX IF NOT EXISTS; 18.16 has neither, and reads there work without them.
-- Parts written before the index existed gain it as they merge.
ALTER TABLE events ADD INDEX IF NOT EXISTS events_token_fp token_fp TYPE bloom_filter(0.01) GRANULARITY 4;
ALTER TABLE events ADD INDEX IF NOT EXISTS events_route route TYPE bloom_filter(0.01) GRANULARITY 4;
