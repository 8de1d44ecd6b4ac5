"""Many attestations through one real server plugin process: software nodes (fleet.py),
an asyncio driver over the plugin's gRPC socket (driver.py), 200 at once
(`concurrent_figures`) and the long mixed soak (soak.py, `make soak`)."""
