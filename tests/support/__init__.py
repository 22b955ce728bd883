"""Helpers the tests call with their own arguments (a selector in a thread, fake upstream LLMs, small
datasets). Fixtures, which pytest hands to a test by name, live in conftest.py instead."""
