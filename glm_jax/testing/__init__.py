"""Test support that ships with the package (a local GCS emulator)."""
