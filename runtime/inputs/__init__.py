"""Inputs in, pixels out, at a bounded cost: image files and bytes (sizes read from the
header before decoding, one bounded walker over JPEG segments and TIFF entries), the
camera facts in EXIF, and live frame sources.
"""
