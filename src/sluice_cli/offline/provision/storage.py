"""KMS, S3, DynamoDB, SSM and Secrets Manager resources.

The `*_request` functions translate CloudFormation properties to API arguments (pure, unit
tested); the provisioners call the emulator with them.
"""

from __future__ import annotations

import json
import secrets
import string
from typing import Any

from sluice_cli.offline.provision import (
    ProvisionContext,
    Resource,
    provisioner,
    tags_dict,
    tags_list,
    text,
)

# -- KMS --------------------------------------------------------------------------------------------


@provisioner("AWS::KMS::Key")
def kms_key(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    kms = ctx.client("kms")
    request: dict[str, Any] = {
        "Description": props.get("Description", logical_id),
        "KeyUsage": props.get("KeyUsage", "ENCRYPT_DECRYPT"),
        "KeySpec": props.get("KeySpec", "SYMMETRIC_DEFAULT"),
    }
    if "KeyPolicy" in props:
        policy = props["KeyPolicy"]
        request["Policy"] = policy if isinstance(policy, str) else json.dumps(policy)
    if props.get("Tags"):
        request["Tags"] = [
            {"TagKey": tag["Key"], "TagValue": tag["Value"]} for tag in tags_list(props["Tags"])
        ]
    metadata = kms.create_key(**request)["KeyMetadata"]
    if props.get("EnableKeyRotation"):
        kms.enable_key_rotation(KeyId=metadata["KeyId"])
    return Resource(
        logical_id, "AWS::KMS::Key", metadata["KeyId"], {"Arn": metadata["Arn"], "KeyId": metadata["KeyId"]}
    )


@provisioner("AWS::KMS::Alias")
def kms_alias(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    ctx.client("kms").create_alias(AliasName=props["AliasName"], TargetKeyId=props["TargetKeyId"])
    return Resource(logical_id, "AWS::KMS::Alias", props["AliasName"], {})


# -- S3 ---------------------------------------------------------------------------------------------


def lifecycle_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CloudFormation's LifecycleConfiguration.Rules → PutBucketLifecycleConfiguration's Rules."""
    converted = []
    for index, rule in enumerate(rules):
        item: dict[str, Any] = {
            "ID": rule.get("Id", f"rule-{index}"),
            "Status": rule.get("Status", "Enabled"),
        }
        item["Filter"] = {"Prefix": rule["Prefix"]} if "Prefix" in rule else {"Prefix": ""}
        transitions = list(rule.get("Transitions", []))
        if "Transition" in rule:
            transitions.append(rule["Transition"])
        if transitions:
            item["Transitions"] = [_transition(entry) for entry in transitions]
        if "ExpirationInDays" in rule:
            item["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
        elif "ExpirationDate" in rule:
            item["Expiration"] = {"Date": rule["ExpirationDate"]}
        elif rule.get("ExpiredObjectDeleteMarker") in (True, "true"):
            item["Expiration"] = {"ExpiredObjectDeleteMarker": True}
        noncurrent = rule.get("NoncurrentVersionExpiration")
        if noncurrent:
            item["NoncurrentVersionExpiration"] = {"NoncurrentDays": int(noncurrent["NoncurrentDays"])}
        elif "NoncurrentVersionExpirationInDays" in rule:
            item["NoncurrentVersionExpiration"] = {
                "NoncurrentDays": int(rule["NoncurrentVersionExpirationInDays"])
            }
        noncurrent_transitions = list(rule.get("NoncurrentVersionTransitions", []))
        if noncurrent_transitions:
            item["NoncurrentVersionTransitions"] = [
                {"NoncurrentDays": int(entry["TransitionInDays"]), "StorageClass": entry["StorageClass"]}
                for entry in noncurrent_transitions
            ]
        abort = rule.get("AbortIncompleteMultipartUpload")
        if abort:
            item["AbortIncompleteMultipartUpload"] = {
                "DaysAfterInitiation": int(abort["DaysAfterInitiation"])
            }
        converted.append(item)
    return converted


def _transition(entry: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"StorageClass": entry["StorageClass"]}
    if "TransitionInDays" in entry:
        result["Days"] = int(entry["TransitionInDays"])
    if "TransitionDate" in entry:
        result["Date"] = entry["TransitionDate"]
    return result


def encryption_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CloudFormation's ServerSideEncryptionConfiguration → PutBucketEncryption's Rules."""
    converted = []
    for rule in rules:
        item: dict[str, Any] = {}
        if "ServerSideEncryptionByDefault" in rule:
            item["ApplyServerSideEncryptionByDefault"] = rule["ServerSideEncryptionByDefault"]
        if "BucketKeyEnabled" in rule:
            item["BucketKeyEnabled"] = rule["BucketKeyEnabled"] in (True, "true")
        converted.append(item)
    return converted


def notification_configuration(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """CloudFormation's NotificationConfiguration → the API's, and what is left out (with why)."""
    request: dict[str, Any] = {}
    skipped: list[str] = []
    if config.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled") in (True, "true"):
        request["EventBridgeConfiguration"] = {}
    queues = [
        {"QueueArn": item["Queue"], "Events": [item["Event"]], **_filter(item)}
        for item in config.get("QueueConfigurations", [])
    ]
    if queues:
        request["QueueConfigurations"] = queues
    topics = [
        {"TopicArn": item["Topic"], "Events": [item["Event"]], **_filter(item)}
        for item in config.get("TopicConfigurations", [])
    ]
    if topics:
        request["TopicConfigurations"] = topics
    if config.get("LambdaConfigurations"):
        skipped.append("S3 → Lambda notifications (moto would need Docker to run the function)")
    return request, skipped


def _filter(item: dict[str, Any]) -> dict[str, Any]:
    rules = item.get("Filter", {}).get("S3Key", {}).get("Rules", [])
    if not rules:
        return {}
    return {
        "Filter": {"Key": {"FilterRules": [{"Name": rule["Name"], "Value": rule["Value"]} for rule in rules]}}
    }


@provisioner("AWS::S3::Bucket")
def s3_bucket(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    s3 = ctx.client("s3")
    name = ctx.name_of(logical_id, "AWS::S3::Bucket", props)
    request: dict[str, Any] = {"Bucket": name}
    if ctx.region != "us-east-1":
        request["CreateBucketConfiguration"] = {"LocationConstraint": ctx.region}
    s3.create_bucket(**request)
    notes: list[str] = []
    if (status := props.get("VersioningConfiguration", {}).get("Status")) is not None:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": status})
    if "BucketEncryption" in props:
        rules = encryption_rules(props["BucketEncryption"].get("ServerSideEncryptionConfiguration", []))
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
    if "PublicAccessBlockConfiguration" in props:
        block = {
            key: value in (True, "true") for key, value in props["PublicAccessBlockConfiguration"].items()
        }
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=block)
    if "OwnershipControls" in props:
        s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls=props["OwnershipControls"])
    if rules := props.get("LifecycleConfiguration", {}).get("Rules"):
        s3.put_bucket_lifecycle_configuration(
            Bucket=name, LifecycleConfiguration={"Rules": lifecycle_rules(rules)}
        )
    if "NotificationConfiguration" in props:
        request, skipped = notification_configuration(props["NotificationConfiguration"])
        s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration=request)
        notes.extend(skipped)
    if props.get("Tags"):
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tags_list(props["Tags"])})
    attributes = {
        "Arn": f"arn:aws:s3:::{name}",
        "DomainName": f"{name}.s3.amazonaws.com",
        "RegionalDomainName": f"{name}.s3.{ctx.region}.amazonaws.com",
        "DualStackDomainName": f"{name}.s3.dualstack.{ctx.region}.amazonaws.com",
        "WebsiteURL": f"http://{name}.s3-website-{ctx.region}.amazonaws.com",
    }
    return Resource(logical_id, "AWS::S3::Bucket", name, attributes, note="; ".join(notes))


def evaluable_policy(policy: Any) -> tuple[dict[str, Any] | None, int]:
    """The statements moto can evaluate faithfully, and how many were left out.

    moto enforces bucket policies but ignores their conditions, so a conditional Deny (such as
    "deny when aws:SecureTransport is false") would deny every request. Conditional statements
    are therefore not applied; unconditional ones are.
    """
    document = json.loads(policy) if isinstance(policy, str) else dict(policy)
    statements = document.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else list(statements)
    kept = [statement for statement in statements if "Condition" not in statement]
    if not kept:
        return None, len(statements)
    return {**document, "Statement": kept}, len(statements) - len(kept)


@provisioner("AWS::S3::BucketPolicy")
def s3_bucket_policy(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    document, left_out = evaluable_policy(props["PolicyDocument"])
    if document is not None:
        ctx.client("s3").put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(document))
    note = (
        f"{left_out} conditional statement(s) not applied: moto ignores conditions"
        if left_out
        else "recorded"
    )
    return Resource(logical_id, "AWS::S3::BucketPolicy", props["Bucket"], {}, note=note)


# -- DynamoDB ---------------------------------------------------------------------------------------


def table_request(name: str, props: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation AWS::DynamoDB::Table → CreateTable's arguments."""
    request: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    if request["BillingMode"] == "PROVISIONED":
        throughput = props.get("ProvisionedThroughput", {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5})
        request["ProvisionedThroughput"] = {key: int(value) for key, value in throughput.items()}
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if props.get(key):
            request[key] = props[key]
    if "StreamSpecification" in props:
        request["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    if "SSESpecification" in props:
        sse = props["SSESpecification"]
        request["SSESpecification"] = {"Enabled": sse.get("SSEEnabled") in (True, "true")}
        if "SSEType" in sse:
            request["SSESpecification"]["SSEType"] = sse["SSEType"]
        if "KMSMasterKeyId" in sse:
            request["SSESpecification"]["KMSMasterKeyId"] = sse["KMSMasterKeyId"]
    if "TableClass" in props:
        request["TableClass"] = props["TableClass"]
    if "DeletionProtectionEnabled" in props:
        request["DeletionProtectionEnabled"] = props["DeletionProtectionEnabled"] in (True, "true")
    if props.get("Tags"):
        request["Tags"] = tags_list(props["Tags"])
    return request


@provisioner("AWS::DynamoDB::Table")
def dynamodb_table(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    dynamodb = ctx.client("dynamodb")
    name = ctx.name_of(logical_id, "AWS::DynamoDB::Table", props)
    description = dynamodb.create_table(**table_request(name, props))["TableDescription"]
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled") in (True, "true"):
        dynamodb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
        )
    recovery = props.get("PointInTimeRecoverySpecification")
    if recovery and recovery.get("PointInTimeRecoveryEnabled") in (True, "true"):
        dynamodb.update_continuous_backups(
            TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
    attributes = {"Arn": description["TableArn"]}
    if "LatestStreamArn" in description:
        attributes["StreamArn"] = description["LatestStreamArn"]
    return Resource(logical_id, "AWS::DynamoDB::Table", name, attributes)


# -- SSM and Secrets Manager ------------------------------------------------------------------------


@provisioner("AWS::SSM::Parameter")
def ssm_parameter(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::SSM::Parameter", props)
    request: dict[str, Any] = {
        "Name": name,
        "Type": props.get("Type", "String"),
        "Value": text(props["Value"]),
    }
    for key in ("Description", "AllowedPattern", "Tier", "DataType"):
        if key in props:
            request[key] = props[key]
    if props.get("Tags"):
        request["Tags"] = [{"Key": key, "Value": value} for key, value in tags_dict(props["Tags"]).items()]
    ctx.client("ssm").put_parameter(**request)
    return Resource(
        logical_id, "AWS::SSM::Parameter", name, {"Type": request["Type"], "Value": request["Value"]}
    )


def generated_secret(spec: dict[str, Any]) -> str:
    """GenerateSecretString: a random password, optionally inside SecretStringTemplate's JSON."""
    alphabet = string.ascii_letters + string.digits
    if spec.get("ExcludePunctuation") not in (True, "true"):
        alphabet += "!#$%&()*+,-.:;<=>?@[]^_{|}~"
    excluded = set(spec.get("ExcludeCharacters", ""))
    alphabet = "".join(char for char in alphabet if char not in excluded)
    password = "".join(secrets.choice(alphabet) for _ in range(int(spec.get("PasswordLength", 32))))
    if "SecretStringTemplate" in spec and "GenerateStringKey" in spec:
        document = json.loads(spec["SecretStringTemplate"])
        document[spec["GenerateStringKey"]] = password
        return json.dumps(document)
    return password


@provisioner("AWS::SecretsManager::Secret")
def secret(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::SecretsManager::Secret", props)
    value = props.get("SecretString") or generated_secret(props.get("GenerateSecretString", {}))
    request: dict[str, Any] = {"Name": name, "SecretString": value}
    for key in ("Description", "KmsKeyId"):
        if key in props:
            request[key] = props[key]
    if props.get("Tags"):
        request["Tags"] = tags_list(props["Tags"])
    arn = ctx.client("secretsmanager").create_secret(**request)["ARN"]
    return Resource(logical_id, "AWS::SecretsManager::Secret", arn, {"Id": arn})
