"""Integration tests: the real default model behind a real server on 127.0.0.1, real clients.

A package so that module names here never collide with same-named unit test modules.
"""
