# The refresh cost of free-prefix counting against moto: 5,000 ENIs (3 addresses each) in one /16, then
# DescribeNetworkInterfaces (1,000 a page; moto ignores MaxResults) + GetSubnetCidrReservations, timed.
# Run: target/test-venv/bin/python tests/support/moto_prefix_cost.py
import time, subprocess, socket, sys, boto3
port = 5077
srv = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close(); break
    except OSError:
        time.sleep(0.2)
ec2 = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
sub = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/16", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
t = time.time()
n = 5000
for i in range(n):
    a = 16 + i * 12
    ips = [f"10.0.{(a + k) // 256}.{(a + k) % 256}" for k in range(3)]
    ec2.create_network_interface(SubnetId=sub, PrivateIpAddresses=[{"PrivateIpAddress": ip, "Primary": k == 0} for k, ip in enumerate(ips)])
print(f"created {n} ENIs (3 addresses each) in {time.time()-t:.0f} s")
ec2.create_subnet_cidr_reservation(SubnetId=sub, Cidr="10.0.240.0/20", ReservationType="prefix")
for rep in range(3):
    t = time.time(); calls = 0; enis = 0; addrs = 0
    kw = {"Filters": [{"Name": "subnet-id", "Values": [sub]}], "MaxResults": 1000}
    while True:
        r = ec2.describe_network_interfaces(**kw); calls += 1
        enis += len(r["NetworkInterfaces"]); addrs += sum(len(e["PrivateIpAddresses"]) for e in r["NetworkInterfaces"])
        tok = r.get("NextToken")
        if not tok: break
        kw["NextToken"] = tok
    ec2.get_subnet_cidr_reservations(SubnetId=sub); calls += 1
    print(f"refresh {rep}: {calls} calls, {enis} ENIs, {addrs} addresses, {time.time()-t:.2f} s")
srv.terminate()
