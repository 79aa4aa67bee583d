from assay.cli import main

if __name__ == "__main__":  # the process executor's forkserver imports this module too
    main()
