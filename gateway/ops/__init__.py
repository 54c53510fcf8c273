"""Operations: encrypted, signed backups and restores of a Palisade installation (``palisade backup|restore``)."""
