"""TODO validate"""
