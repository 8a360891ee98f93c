"""Output encoding: the network's depth resized and coloured (postprocess), PNG bytes,
depth files, heatmaps and overlays (render), point clouds. They import one way:
png <- depth_files <- render.
"""
