"""Campaigns: modes, lifecycle, treatments and dispositions."""
