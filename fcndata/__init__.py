"""fcndata: tf.data pipelines for training fully convolutional segmentation networks."""
__version__ = "0.1.0"
