"""Runnable examples, one command each, writing PNG results (``--out``,
default ``./cnnkernels-examples``):

    python -m cnnkernels.examples.train_lenet      # LeNet-5 on 8x8 digits: loss and accuracy
    python -m cnnkernels.examples.style_transfer   # the course's neural style transfer
    python -m cnnkernels.examples.detect           # a YOLO grid detector: decode + padded NMS
    python -m cnnkernels.examples.face_verify      # a Siamese embedding net: distances, ROC
    python -m cnnkernels.examples.segment          # U-Net on synthetic discs and rings

They need the ``examples`` extra (``pip install "cnnkernels[examples]"``:
tqdm, matplotlib, scikit-learn) and download nothing.
"""
