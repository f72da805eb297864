"""Tests of ldrop.selectors."""
