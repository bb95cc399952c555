"""Visual place recognition for ROS 2: DINOv2 + SALAD / A2GC global descriptors and a FAISS place map."""

__version__ = "0.1.0"
