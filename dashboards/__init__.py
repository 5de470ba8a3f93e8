"""Dashboards: Grafana provisioning built from code (`dashboards.builder`), the files it
writes (`json/`, `provisioning/`), and `urbansense dashboards build|check|push`."""
