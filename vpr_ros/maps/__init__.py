"""Place maps: global descriptors in a FAISS index plus per-place metadata, saved atomically."""
