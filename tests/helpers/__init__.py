"""Test utilities: polling (`until`) and a tiny test-side AMI client (`ami`)."""
