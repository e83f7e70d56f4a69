def main():\n    raise SystemExit("todo")
