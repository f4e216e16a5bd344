"""Plotly figure builders: plain data (DataFrames, numbers) in, ``plotly.graph_objects.Figure`` out."""
