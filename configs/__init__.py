"""ml_collections configs: `tiny` (CPU, tests, demo), `sana600m_x4`, `sana1600m_x4`."""
