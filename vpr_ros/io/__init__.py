"""Files on disk: atomic writes and fsync, SHA-256 of files (:mod:`.files`); pickles told apart and refused
unrun (:mod:`.pickles`); checkpoints (:mod:`.checkpoints`) and ``.npy`` arrays (:mod:`.npy`) read safely."""
