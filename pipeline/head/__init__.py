"""TODO head"""
