"""TODO extract"""
