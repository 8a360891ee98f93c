from midas_onnx.cli import main

main(prog_name="midas-onnx")
