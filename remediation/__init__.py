"""Keeps every Azure VM in scope covered by Microsoft Defender for Endpoint."""
