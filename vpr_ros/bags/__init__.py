"""Rosbags in and out: reading frames and poses, writing test bags, geodesy, offline map building."""
