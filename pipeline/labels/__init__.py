"""TODO labels"""
