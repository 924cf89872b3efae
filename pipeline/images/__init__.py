"""TODO images"""
