"""Deployment artefacts; only deploy.demo is Python."""
