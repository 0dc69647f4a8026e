"""Ops: doctor, the status report and dashboard, metrics, trace."""
