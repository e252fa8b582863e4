"""The per-video packet index: the table (table.py), how a file is indexed (build.py), the cache file (cache.py)."""
