"""Exporters: wquant's stored codes and scales written into the files inference engines read."""
