"""Maths on depth maps: the one least-squares scale and shift (align), metric depth from
known points (metric), steady colour ranges over video frames (steady).
"""
